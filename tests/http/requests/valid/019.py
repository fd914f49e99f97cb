requests = [dict(method="DELETE", body=b""), dict(method="PUT", body=b"")]
