status = 400
reason = "invalid request line"
# The same with a bare CR and runs of spaces: accepted when fed whole, refused when the CR
# came in a read of its own (found as a split-dependent parse by the differential check).
