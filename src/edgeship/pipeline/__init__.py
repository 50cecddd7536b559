"""The stages of the pipeline and the runner that times them."""
