-- POST /v3/kv/range on etcd's JSON gateway for one key <prefix>-1-<n>, n uniform in 1..max:
-- the keys the 1-connection write run created. Arguments: prefix, max, and "serializable"
-- for a local read (default: linearizable).

local keys, body_format

function init(args)
  local prefix, max = args[1], tonumber(args[2]) or 1
  local serializable = args[3] == "serializable"
  math.randomseed(tid * 7919 + os.time())
  keys = {}
  for n = 1, max do
    keys[n] = base64(prefix .. "-1-" .. n)
  end
  body_format = serializable and '{"key":"%s","serializable":true}' or '{"key":"%s"}'
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  return wrk.format(nil, nil, nil, string.format(body_format, keys[math.random(1, #keys)]))
end
