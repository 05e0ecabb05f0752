"""From video to a fitted head: decoding, landmarks (MediaPipe, FAN), aligned crops, optical
flow, the static FLAME fit and the flow reader."""
