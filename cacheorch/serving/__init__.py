"""The parts of ``cacheorch serve``: the threaded server and its lifecycle, the MapServer JSON, the
preview page, the route table, the request handler, ``/export`` (images stitched from tiles) and
WMTS 1.0.0. :mod:`cacheorch.serve` puts them together and keeps the names other code imports.
"""
