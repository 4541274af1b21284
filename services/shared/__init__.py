"""Code both services share: config loading, logging, the trade model, the wire codec."""
