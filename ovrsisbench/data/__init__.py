"""The unified dataset format: layout, meta.json, reader, writer and loader."""
