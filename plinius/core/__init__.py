"""What every layer may use: errors, files and memory, units, the plug-in registry, the AES-GCM
engines, the model protocol and the embedded data sets."""
