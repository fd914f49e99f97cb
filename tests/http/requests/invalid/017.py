status = 400
# A bare CR.
