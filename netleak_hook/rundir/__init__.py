"""The run directory: directories only root can change, the state file, logs."""
