"""What the cache holds and means: the layout (keys only), the manifest, the pure cache
decision, the inventory behind `status`/`verify`, batch job records and product locks.
"""
