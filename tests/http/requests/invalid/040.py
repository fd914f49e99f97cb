status = 400
# Space in the target.
