"""Networks only (torch.nn.Module); never imports the ovrsisbench core."""
