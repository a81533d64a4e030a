-- wrk script: GET the URL with a fresh W3C traceparent (sampled) on every request,
-- as a traced edge would send it: a new trace id and parent span id each time.
-- bench/wrk.py starts wrk from the repository root, hence the relative path.
dofile("bench/wrk/summary.lua")

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("thread_no", counter)
end

function init(args)
  math.randomseed(tonumber(args[1] or "1") + (thread_no or 0))
end

local function hex(words)
  local parts = {}
  for i = 1, words do
    -- 24 random bits at a time: exact in a double, whatever the Lua.
    parts[i] = string.format("%06x", math.random(0, 0xffffff))
  end
  return table.concat(parts)
end

function request()
  local trace_id = hex(6):sub(1, 32)
  local parent_id = hex(3):sub(1, 16)
  wrk.headers["traceparent"] = "00-" .. trace_id .. "-" .. parent_id .. "-01"
  return wrk.format()
end
