"""Generators of tiny datasets in each source's *raw official format* (test fixtures only).

Every module writes files exactly as the official download lays them out (folder and file names,
palettes or index encodings, TIFF/PNG/JPG types, archives) and returns a ``RawFixture`` that
says what ``ovrsisbench prepare`` must produce from them.
"""
