-- wrk script: Alertmanager v4 webhooks with ALERTS distinct alerts each, spread
-- over 50 services, with fingerprints unique across the whole run.
--   ALERTS=100 wrk -t1 -c16 -d10s -s bench/alertmanager.lua http://127.0.0.1:8080
local per_body = tonumber(os.getenv("ALERTS") or "100")
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  wrk.method = "POST"
  wrk.path = "/api/v1/alerts/alertmanager"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local service = "svc" .. (counter % 50)
  local alerts = {}
  for i = 1, per_body do
    local fp = string.format("%02x%07x%07x", thread_id, counter, i)
    alerts[i] = '{"status":"firing","labels":{"alertname":"HighErrorRate","service":"' .. service ..
      '","env":"prod","instance":"' .. fp .. '"},"annotations":{"summary":"5xx rate > 5%"},' ..
      '"startsAt":"2026-11-23T04:38:36.898740626Z","endsAt":"0001-01-01T00:00:00Z",' ..
      '"generatorURL":"http://prom.local/graph","fingerprint":"' .. fp .. '"}'
  end
  local body = '{"receiver":"firebreak","status":"firing","alerts":[' .. table.concat(alerts, ",") ..
    '],"groupLabels":{"service":"' .. service .. '"},"commonLabels":{"service":"' .. service ..
    '"},"commonAnnotations":{},"externalURL":"http://am:9093","version":"4","groupKey":"g","truncatedAlerts":0}'
  return wrk.format(nil, nil, nil, body)
end
