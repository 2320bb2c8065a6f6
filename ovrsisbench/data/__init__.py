"""The unified dataset format (layout, meta.json, reader, writer, loader), dataset registry."""
