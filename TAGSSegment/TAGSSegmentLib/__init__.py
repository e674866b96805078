"""Support code of the TAGSSegment module: GUI-free logic (`logic`), shared state and the Segment Editor effect."""
