"""Device profiles (what a device is, how to reach it) and the transports that reach it."""
