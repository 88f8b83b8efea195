"""Pure decisions over plain data: placement, state transitions, retry policy. No I/O."""
