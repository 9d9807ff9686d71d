"""Talking to Databento: the SDK facade (the only builder of `databento.Historical`), the
ranged batch-file fetcher, retry and pacing. Every SDK/HTTP failure leaves as one of our errors.
"""
