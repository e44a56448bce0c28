"""What a training step costs: model FLOPs per batch, MFU against the device's peak, peak memory."""
