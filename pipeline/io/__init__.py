"""Reading inputs (URL lists, existing WebDataset outputs), writing shards, the crawl
log, previous outputs, and the file names of an output folder (`layout`)."""
