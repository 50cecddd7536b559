"""The runner shipped to devices, the statistics the host computes from its raw samples."""
