-- GET /api/products/{id} with id uniform in 1..max. Arguments: max, then a query string
-- (e.g. "?consistency=strong") or nothing.

local max, query

function init(args)
  max = tonumber(args[1]) or 1
  query = args[2] or ""
  math.randomseed(tid * 7919 + os.time())
end

function request()
  return wrk.format("GET", "/api/products/" .. math.random(1, max) .. query)
end
