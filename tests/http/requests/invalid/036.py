status = 400
reason = 'target'
# absolute-form with a foreign scheme.
