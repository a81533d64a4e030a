-- wrk script: GET <prefix>/fibo?n=<random n in 0..maxseq> on every request.
-- Arguments after `--`: maxseq prefix seed [lowest n, default 0]. A fixed seed
-- gives the service and the ceiling the same sequence of n, so both do the same
-- arithmetic. tests/test_overload.py asks only large n (the costly ones).
-- bench/wrk.py starts wrk from the repository root, hence the relative path.
dofile("bench/wrk/summary.lua")

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_no", counter)
end

local maxseq, prefix, lowest

function init(args)
  maxseq = tonumber(args[1])
  prefix = args[2]
  lowest = tonumber(args[4] or "0")
  math.randomseed(tonumber(args[3]) + (thread_no or 0))
end

function request()
  return wrk.format("GET", prefix .. "/fibo?n=" .. math.random(lowest, maxseq))
end
