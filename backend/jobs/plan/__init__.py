"""Before anything is paid for: symbology, estimates, the budget, the engine choice, and the
batch jobs recorded earlier that a run resumes.
"""
