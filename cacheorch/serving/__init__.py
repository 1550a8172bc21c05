"""The parts of ``cacheorch serve`` beyond the tile path: ``/export`` (images stitched from tiles)
and WMTS 1.0.0. :mod:`cacheorch.serve` holds the server and routes requests here.
"""
