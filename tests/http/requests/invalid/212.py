status = 400
reason = 'fragment'
# a fragment after the query.
