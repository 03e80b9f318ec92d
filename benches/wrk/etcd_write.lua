-- POST /v3/kv/put on etcd's JSON gateway: key <run>-<thread>-<n>, value the same product JSON
-- as labctl_write.lua sends, both base64 as the gateway wants. Argument: the run's prefix.

init = init_writes

function request()
  counter = counter + 1
  local key = prefix .. counter
  local body = string.format('{"key":"%s","value":"%s"}', base64(key), base64(product_json(key, counter)))
  return wrk.format(nil, nil, nil, body)
end
