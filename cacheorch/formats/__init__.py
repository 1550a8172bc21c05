"""Byte-level readers and writers of ArcGIS cache formats (bundles, conf.xml, root.json)."""
