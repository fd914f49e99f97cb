status = 505
