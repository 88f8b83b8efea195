"""The flow data plane: framed TCP streams between stage instances, with backpressure."""
