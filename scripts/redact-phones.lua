-- Redacts phone numbers in `session:message-sent` before it reaches any client.
--
-- `senderPhone` keeps only its last two digits; in `content`, every run of 9 to 15 digits
-- (with optional +, spaces, dots, dashes and parentheses between them) is masked the same way.
-- Other events pass unchanged.

local MIN_DIGITS = 9
local MAX_DIGITS = 15

-- "+1 (555) 123-4567" -> "+* (***) ***-**67"
local function mask(number)
  local total = select(2, string.gsub(number, "%d", ""))
  local seen = 0
  return (string.gsub(number, "%d", function(d)
    seen += 1
    if seen > total - 2 then
      return d
    end
    return "*"
  end))
end

local function redact_text(text)
  return (string.gsub(text, "%+?%d[%d%s%.%-%(%)]*%d", function(run)
    local digits = select(2, string.gsub(run, "%d", ""))
    if digits >= MIN_DIGITS and digits <= MAX_DIGITS then
      return mask(run)
    end
    return run
  end))
end

function on_outbound(event, payload)
  if event ~= "session:message-sent" then
    return payload
  end
  if type(payload.content) == "string" then
    payload.content = redact_text(payload.content)
  end
  if type(payload.senderPhone) == "string" then
    payload.senderPhone = mask(payload.senderPhone)
  end
  return payload
end
