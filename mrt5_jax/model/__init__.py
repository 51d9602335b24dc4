"""The Flax network: config, layers, attention, the shortening modules, the encoder-decoder."""
