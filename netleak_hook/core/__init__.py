"""Pure values and decisions: no kernel, no BCC, no pyroute2, no files but the ones named."""
