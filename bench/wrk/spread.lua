-- Requests spread over many keys (hosts, slugs, session tokens), uniform or Zipf.
--
-- wrk -s bench/wrk/spread.lua <url> -- <keys file> [uniform|zipf|sequential] [exponent|start]
--
-- The keys file has one request per line, tab-separated: host, path, and optionally one more
-- header ("Cookie: session=..."). A line's rank is its place in the file: with "zipf", line k
-- is asked with weight 1 / k^exponent (exponent 1.0 unless given, Zipf's law as in web traffic),
-- so a few keys are hot and most are cold; with "uniform" every line alike; "sequential" goes
-- through the lines in order from line <start> + 1 (a warm-up that visits every key). Every request
-- string is built once in init (per wrk thread), so what wrk measures is the server, not Lua.
-- bench/wrk/load.py writes key files and runs wrk with this script.

local requests = {}
local cumulative = nil
local count = 0
local sequential = false
local next_line = 0

local function split(line)
  local fields = {}
  for field in (line .. "\t"):gmatch("([^\t]*)\t") do
    fields[#fields + 1] = field
  end
  return fields
end

function init(args)
  local path, distribution, exponent = args[1], args[2] or "uniform", tonumber(args[3] or "1.0")
  if path == nil then
    error("usage: wrk -s spread.lua <url> -- <keys file> [uniform|zipf] [exponent]")
  end
  for line in io.lines(path) do
    if line ~= "" then
      local fields = split(line)
      local headers = {Host = fields[1]}
      if fields[3] ~= nil and fields[3] ~= "" then
        local name, value = fields[3]:match("^([^:]+):%s*(.*)$")
        headers[name] = value
      end
      count = count + 1
      requests[count] = wrk.format("GET", fields[2], headers)
    end
  end
  if count == 0 then
    error("no keys in " .. path)
  end
  if distribution == "zipf" then
    cumulative = {}
    local total = 0.0
    for k = 1, count do
      total = total + 1.0 / (k ^ exponent)
      cumulative[k] = total
    end
    for k = 1, count do
      cumulative[k] = cumulative[k] / total
    end
  elseif distribution == "sequential" then
    sequential = true
    next_line = math.floor(exponent or 0) % count
  elseif distribution ~= "uniform" then
    error("distribution must be uniform, zipf or sequential, not " .. distribution)
  end
  -- Each wrk thread draws its own sequence.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
end

local function zipf_rank()
  local u = math.random()
  local low, high = 1, count
  while low < high do
    local middle = math.floor((low + high) / 2)
    if cumulative[middle] < u then
      low = middle + 1
    else
      high = middle
    end
  end
  return low
end

function request()
  if sequential then
    next_line = next_line % count + 1
    return requests[next_line]
  end
  if cumulative ~= nil then
    return requests[zipf_rank()]
  end
  return requests[math.random(count)]
end
