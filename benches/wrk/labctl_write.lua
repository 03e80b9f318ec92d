-- POST /api/products: one new product a request, titled <run>-<thread>-<n>.
-- Argument: the run's prefix.

init = init_writes

function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, product_json(prefix .. counter, counter))
end
