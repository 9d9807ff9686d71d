"""Where files live: the small store interface, the local folder and the `s3://` bucket, and
leases built on the interface's conditional writes.
"""
