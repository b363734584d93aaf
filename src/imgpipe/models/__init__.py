"""The networks: imgpipe's own, torchvision's zoo, self-describing checkpoints, and class scores."""
