"""Where an architectural value came from: the words results.json, the PDF and the rubric share.

The last three mean nobody established the value: the PDF shows it as not verified and the rubric's
architecture criterion gives no points for a requirement that rests on one of them.
"""

WEIGHTS = "weights"
CONFIG = "checkpoint config"
HINTS = "submission.toml"
LAYOUT = "layout default"
CALIBRATION = "calibration"
UNVERIFIED = "default (unverified)"  # nothing settled it and calibration did not run
UNDECIDED = "calibration (unverified)"  # calibration ran, but the candidates' losses could not be told apart
NOT_VERIFIED = "not verified"  # custom code whose weights, stored config and module do not tell it

UNESTABLISHED = (UNVERIFIED, UNDECIDED, NOT_VERIFIED)
