"""Images: references, the content-addressed store, archive formats and safe layer unpacking."""
