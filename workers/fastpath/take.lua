-- The take script of workers/fastpath/transport.py: every message leaves its queue here, and
-- only after it is recorded as unacked (kombu's own format), in one atomic call.
--
-- KEYS[1] unacked hash, KEYS[2] unacked index, KEYS[3..] queue keys grouped by priority level
-- (ARGV[3] keys per level, in the consumer's round-robin order). ARGV[1] most messages,
-- ARGV[2] now (the index score, as kombu's QoS.append writes it), ARGV[4] byte budget (the
-- first message is taken whatever its size), ARGV[5] one character per queue of a level, '1'
-- for a no_ack consumer. A message is dropped from its queue with LTRIM, not RPOP: RPOP would
-- copy a large message into Lua once more.
-- Within a level, queues give one message each in turn. Returns kind, key, tag, item for each
-- item taken: 'a' recorded as unacked, then popped; 'n' popped for a no_ack consumer (one per
-- queue, kombu records none); 'x' not a kombu message, popped (its size in place of the item).

-- A message's properties. kombu writes them last: decode that tail only (a 2 MB message is
-- not decoded whole inside Redis); anything else (another key order, a tail that is not JSON)
-- is decoded whole.
local function properties_of(item)
    local last, at = nil, math.max(1, #item - 65536) - 1
    repeat
        at = string.find(item, '"properties":', at + 1, true)
        if at then last = at end
    until not at
    if last then
        local ok, tail = pcall(cjson.decode, string.sub(item, last + 13, -2))
        if ok and type(tail) == 'table' and type(tail['delivery_tag']) == 'string' then
            return tail
        end
    end
    local ok, message = pcall(cjson.decode, item)
    if ok and type(message) == 'table' and type(message['properties']) == 'table' then
        return message['properties']
    end
    return nil
end

local room = tonumber(ARGV[1])
local per_level = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local no_ack = ARGV[5]
local taken = {}
local first = 3
while first <= #KEYS and room > 0 and budget > 0 do
    local open = {}
    for i = first, math.min(first + per_level - 1, #KEYS) do open[#open + 1] = i end
    while #open > 0 and room > 0 and budget > 0 do
        local still = {}
        for _, i in ipairs(open) do
            if room <= 0 or budget <= 0 then break end
            local key = KEYS[i]
            local item = redis.call('LINDEX', key, -1)
            if item and #taken > 0 and #item > budget then
                budget = 0
            elseif item then
                budget = budget - #item
                room = room - 1
                local flag = i - first + 1
                local properties = properties_of(item)
                local tag = properties and properties['delivery_tag']
                if no_ack:sub(flag, flag) == '1' then
                    redis.call('LTRIM', key, 0, -2)
                    taken[#taken + 1] = 'n'
                    taken[#taken + 1] = key
                    taken[#taken + 1] = ''
                    taken[#taken + 1] = item
                elseif type(tag) == 'string' then
                    local info = properties['delivery_info']
                    local exchange, routing_key = '', ''
                    if type(info) == 'table' then
                        if type(info['exchange']) == 'string' then exchange = info['exchange'] end
                        if type(info['routing_key']) == 'string' then
                            routing_key = info['routing_key']
                        end
                    end
                    redis.call('ZADD', KEYS[2], ARGV[2], tag)
                    redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' ..
                        cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
                    redis.call('LTRIM', key, 0, -2)
                    taken[#taken + 1] = 'a'
                    taken[#taken + 1] = key
                    taken[#taken + 1] = tag
                    taken[#taken + 1] = item
                    still[#still + 1] = i
                else
                    redis.call('LTRIM', key, 0, -2)
                    taken[#taken + 1] = 'x'
                    taken[#taken + 1] = key
                    taken[#taken + 1] = ''
                    taken[#taken + 1] = tostring(#item)
                    still[#still + 1] = i
                end
            end
        end
        open = still
    end
    first = first + per_level
end
return taken
