"""The daemon: the loop that wires the stages, its states, sd_notify, metrics."""
