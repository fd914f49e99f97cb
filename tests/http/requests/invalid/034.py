status = 400
# authority-form outside CONNECT.
