-- wrk script: send PIPELINE_DEPTH (default 16) GET requests in one write (HTTP/1.1 pipelining).
-- wrk counts every response, so requests/s is responses/s.
local depth = tonumber(os.getenv("PIPELINE_DEPTH") or "16")

init = function(args)
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format(nil, wrk.path)
  end
  req = table.concat(r)
end

request = function()
  return req
end
