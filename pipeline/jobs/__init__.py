"""The jobs (`curate`, `select`, `score`) on one shell (`shell`), and their options."""
