"""webpairs trainer: CLIP/BASIC dual encoders trained on WebDataset shards (torch).

python -m trainer train --data 'shards/{00000..00007}.tar' --output runs/tiny --model tiny
python -m trainer eval --checkpoint runs/tiny --zeroshot imagenet-val/
python -m trainer tokenizer train --data 'shards/*.tar' --output tok.json --vocab-size 8192
"""
