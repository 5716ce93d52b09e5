//! JSON ⇄ Lua: payloads and claims into tables, a script's result back into JSON.
//!
//! Hand-written rather than through serde: a table is filled in one pass with scalars pushed
//! straight into their slots (no intermediate handle per field), which makes a 1 KiB payload
//! several times cheaper.

use std::ffi::c_void;

use mlua::{Either, Lua, Table, Value};
use serde_json::{Map, Number, Value as Json};

/// Deepest nesting converted either way; deeper (or cyclic) tables are refused.
pub(crate) const MAX_DEPTH: usize = 128;

/// The largest integer a double holds exactly (2^53).
const EXACT_INT: i64 = 1 << 53;

/// Converts a JSON value to Lua: objects become tables, arrays tables with `array_mt`.
pub(crate) fn to_lua(lua: &Lua, v: &Json, array_mt: &Table) -> mlua::Result<Value> {
    to_lua_at(lua, v, array_mt, 0)
}

/// Converts a JSON object (token claims) to a Lua table.
pub(crate) fn map_to_lua(
    lua: &Lua,
    map: &Map<String, Json>,
    array_mt: &Table,
) -> mlua::Result<Table> {
    object(lua, map, array_mt, 0)
}

fn to_lua_at(lua: &Lua, v: &Json, array_mt: &Table, depth: usize) -> mlua::Result<Value> {
    Ok(match v {
        Json::Null => Value::NULL,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => number(n),
        Json::String(s) => Value::String(lua.create_string(s)?),
        Json::Array(items) => Value::Table(array(lua, items, array_mt, depth)?),
        Json::Object(map) => Value::Table(object(lua, map, array_mt, depth)?),
    })
}

fn number(n: &Number) -> Value {
    match n.as_i64() {
        Some(i) if (-EXACT_INT..=EXACT_INT).contains(&i) => Value::Integer(i),
        _ => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
    }
}

fn too_deep() -> mlua::Error {
    mlua::Error::runtime(format!("payload nested deeper than {MAX_DEPTH} levels"))
}

/// A scalar pushed directly (a string without an intermediate handle), or a built value.
fn item<'a>(v: &'a Json, nested: &mut impl Iterator<Item = Value>) -> Either<&'a str, Value> {
    match v {
        Json::String(s) => Either::Left(s.as_str()),
        Json::Null => Either::Right(Value::NULL),
        Json::Bool(b) => Either::Right(Value::Boolean(*b)),
        Json::Number(n) => Either::Right(number(n)),
        Json::Array(_) | Json::Object(_) => Either::Right(nested.next().unwrap_or(Value::NULL)),
    }
}

/// Builds the nested arrays and objects among `values`, in order.
fn nested<'a>(
    lua: &Lua,
    values: impl Iterator<Item = &'a Json>,
    array_mt: &Table,
    depth: usize,
) -> mlua::Result<Vec<Value>> {
    let mut out = Vec::new();
    for v in values {
        if matches!(v, Json::Array(_) | Json::Object(_)) {
            out.push(to_lua_at(lua, v, array_mt, depth + 1)?);
        }
    }
    Ok(out)
}

fn array(lua: &Lua, items: &[Json], array_mt: &Table, depth: usize) -> mlua::Result<Table> {
    if depth >= MAX_DEPTH {
        return Err(too_deep());
    }
    let mut inner = nested(lua, items.iter(), array_mt, depth)?.into_iter();
    let t = lua.create_sequence_from(items.iter().map(|v| item(v, &mut inner)))?;
    t.set_metatable(Some(array_mt.clone()))?;
    Ok(t)
}

fn object(
    lua: &Lua,
    map: &Map<String, Json>,
    array_mt: &Table,
    depth: usize,
) -> mlua::Result<Table> {
    if depth >= MAX_DEPTH {
        return Err(too_deep());
    }
    let mut inner = nested(lua, map.values(), array_mt, depth)?.into_iter();
    lua.create_table_from(map.iter().map(|(k, v)| (k.as_str(), item(v, &mut inner))))
}

/// Converts a script's result back to JSON.
///
/// A table with `array_mt`, or with a sequence part, is an array; any other table an object
/// (integer keys become strings). `null` is JSON null; NaN and infinities become null too.
/// Functions, userdata, threads and cycles are refused.
pub(crate) fn from_lua(v: &Value, array_mt: *const c_void) -> Result<Json, String> {
    from_lua_at(v, array_mt, 0)
}

fn from_lua_at(v: &Value, array_mt: *const c_void, depth: usize) -> Result<Json, String> {
    Ok(match v {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => Json::from(*i),
        Value::Number(n) => float(*n),
        Value::String(s) => Json::String(s.to_string_lossy()),
        Value::Table(t) => table(t, array_mt, depth)?,
        other if other.is_null() => Json::Null,
        other => return Err(format!("a {} cannot be sent as JSON", other.type_name())),
    })
}

fn float(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() <= 9.007_199_254_740_992e15 {
        // An integral double (Luau has no integer type): send it as an integer.
        #[allow(clippy::cast_possible_truncation)]
        return Json::from(n as i64);
    }
    Number::from_f64(n).map_or(Json::Null, Json::Number)
}

fn table(t: &Table, array_mt: *const c_void, depth: usize) -> Result<Json, String> {
    if depth >= MAX_DEPTH {
        return Err(format!(
            "table nested deeper than {MAX_DEPTH} levels (or cyclic)"
        ));
    }
    let marked = t.metatable().is_some_and(|m| m.to_pointer() == array_mt);
    let len = t.raw_len();
    if marked || len > 0 {
        let mut items = Vec::with_capacity(len);
        for i in 1..=len {
            let v: Value = t.raw_get(i).map_err(|e| e.to_string())?;
            items.push(from_lua_at(&v, array_mt, depth + 1)?);
        }
        return Ok(Json::Array(items));
    }
    let mut map = Map::new();
    let mut failure = None;
    let walked = t.for_each(|k: Value, v: Value| {
        let key = match &k {
            Value::String(s) => s.to_string_lossy(),
            Value::Integer(i) => i.to_string(),
            Value::Number(n) => n.to_string(),
            other => {
                failure = Some(format!(
                    "a {} key cannot be sent as JSON",
                    other.type_name()
                ));
                return Err(mlua::Error::runtime("stop"));
            }
        };
        match from_lua_at(&v, array_mt, depth + 1) {
            Ok(j) => {
                map.insert(key, j);
                Ok(())
            }
            Err(e) => {
                failure = Some(e);
                Err(mlua::Error::runtime("stop"))
            }
        }
    });
    if let Some(f) = failure {
        return Err(f);
    }
    walked.map_err(|e| e.to_string())?;
    Ok(Json::Object(map))
}
