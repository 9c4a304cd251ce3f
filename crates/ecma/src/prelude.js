(function (g) {
  "use strict";
  var hostCall = g.__sb_host_call;
  delete g.__sb_host_call;
  var TAG = "\u0001t";
  var builtins = new Set(Object.getOwnPropertyNames(g));
  var system = new Set();

  function enc(v, stack) {
    switch (typeof v) {
      case "undefined":
        return { [TAG]: "u" };
      case "number":
        if (v !== v || v === Infinity || v === -Infinity || (v === 0 && 1 / v < 0)) {
          return { [TAG]: "n", v: Object.is(v, -0) ? "-0" : String(v) };
        }
        return v;
      case "string":
      case "boolean":
        return v;
      case "bigint":
        return { [TAG]: "b", v: String(v) };
      case "function": {
        var src = Function.prototype.toString.call(v);
        if (src.indexOf("[native code]") >= 0) return { [TAG]: "u" };
        return { [TAG]: "f", v: src };
      }
      case "symbol":
        return { [TAG]: "u" };
      default:
        break;
    }
    if (v === null) return null;
    if (stack.indexOf(v) >= 0) return { [TAG]: "u" };
    if (v instanceof XmlElement) return { [TAG]: "x", v: v.__tree, s: v.__src };
    if (v instanceof Date) return { [TAG]: "d", v: v.getTime() };
    if (v instanceof RegExp) return { [TAG]: "r", s: v.source, f: v.flags };
    stack.push(v);
    var out;
    if (Array.isArray(v)) {
      out = [];
      for (var i = 0; i < v.length; i++) out.push(enc(v[i], stack));
    } else {
      out = {};
      var keys = Object.keys(v);
      for (var j = 0; j < keys.length; j++) out[keys[j]] = enc(v[keys[j]], stack);
      if (Object.prototype.hasOwnProperty.call(v, TAG)) out = { [TAG]: "o", v: out };
    }
    stack.pop();
    return out;
  }

  function dec(v) {
    if (v === null || typeof v !== "object") return v;
    if (Array.isArray(v)) return v.map(dec);
    if (Object.prototype.hasOwnProperty.call(v, TAG)) {
      switch (v[TAG]) {
        case "u":
          return undefined;
        case "n":
          return v.v === "-0" ? -0 : Number(v.v);
        case "b":
          return BigInt(v.v);
        case "d":
          return new Date(v.v);
        case "r":
          return new RegExp(v.s, v.f);
        case "f":
          try {
            return (0, eval)("(" + v.v + "\n)");
          } catch (e) {
            try {
              return (0, eval)("({" + v.v + "\n})")[Object.keys((0, eval)("({" + v.v + "\n})"))[0]];
            } catch (e2) {
              return undefined;
            }
          }
        case "x":
          return new XmlElement(v.v, v.s);
        case "o": {
          var o = {};
          for (var k in v.v) o[k] = dec(v.v[k]);
          return o;
        }
        default:
          return undefined;
      }
    }
    var out = {};
    for (var key in v) out[key] = dec(v[key]);
    return out;
  }

  function XmlElement(tree, src) {
    Object.defineProperty(this, "__tree", { value: tree, enumerable: false });
    Object.defineProperty(this, "__src", { value: src, enumerable: false });
    this.tagName = tree.n;
    this.nodeName = tree.n;
    this.attributes = tree.a;
    var kids = [];
    for (var i = 0; i < tree.c.length; i++) {
      var c = tree.c[i];
      kids.push(typeof c === "string" ? c : new XmlElement(c));
    }
    this.childNodes = kids;
  }
  XmlElement.prototype.getAttribute = function (n) {
    return Object.prototype.hasOwnProperty.call(this.attributes, n) ? this.attributes[n] : null;
  };
  XmlElement.prototype.getElementsByTagName = function (n) {
    var out = [];
    (function walk(e) {
      for (var i = 0; i < e.childNodes.length; i++) {
        var c = e.childNodes[i];
        if (typeof c === "string") continue;
        if (n === "*" || c.tagName === n) out.push(c);
        walk(c);
      }
    })(this);
    return out;
  };
  Object.defineProperty(XmlElement.prototype, "textContent", {
    get: function () {
      return this.childNodes
        .map(function (c) {
          return typeof c === "string" ? c : c.textContent;
        })
        .join("");
    },
  });

  var withFns = [];
  function withFn(n) {
    if (!withFns[n]) {
      var open = "";
      var close = "";
      for (var i = 0; i < n; i++) {
        open += "with(__sb_c[" + i + "]){";
        close += "}";
      }
      withFns[n] = new Function("__sb_c", "__sb_code", open + "return eval(__sb_code);" + close);
    }
    return withFns[n];
  }

  var exprCache = new Map();
  var assignCache = new Map();
  var geval = eval;
  function cached(cache, key, make) {
    var f = cache.get(key);
    if (f === undefined) {
      f = geval(make(key));
      if (cache.size >= 2000) cache.clear();
      cache.set(key, f);
    }
    return f;
  }

  var sb = {
    slots: {},
    ev: function (expr) {
      return cached(exprCache, expr, function (e) {
        return "(function () { return (" + e + "\n); })";
      })();
    },
    assign: function (location) {
      cached(assignCache, location, function (l) {
        return "(function () { 'use strict'; " + l + " = __sb.slots.__assign; })";
      })();
    },
    scopes: {},
    toSlot: function (slot, v) {
      if (v === null || typeof v !== "object") return -1;
      var arr;
      if (Array.isArray(v)) arr = v.slice();
      else if (typeof v.length === "number") arr = Array.prototype.slice.call(v);
      else arr = Object.keys(v).map(function (k) { return v[k]; });
      sb.slots[slot] = arr;
      return arr.length;
    },
    encode: function (v) {
      return JSON.stringify(enc(v, []));
    },
    setTagged: function (name, s) {
      g[name] = dec(JSON.parse(s));
    },
    setSlot: function (name, s) {
      sb.slots[name] = dec(JSON.parse(s));
    },
    defineSystemTagged: function (name, s) {
      sb.defineSystem(name, dec(JSON.parse(s)));
    },
    defineSystem: function (name, value) {
      system.add(name);
      Object.defineProperty(g, name, {
        value: value,
        writable: false,
        enumerable: false,
        configurable: true,
      });
    },
    defineHost: function (name) {
      var parts = name.split(".");
      var o = g;
      for (var i = 0; i < parts.length - 1; i++) {
        if (o[parts[i]] === undefined || o[parts[i]] === null) o[parts[i]] = {};
        o = o[parts[i]];
      }
      if (parts.length === 1) system.add(name);
      else system.add(parts[0]);
      var f = function () {
        var r = JSON.parse(hostCall(name, JSON.stringify(Array.prototype.slice.call(arguments))));
        if ("err" in r) throw new Error(r.err);
        return r.ok;
      };
      Object.defineProperty(o, parts[parts.length - 1], {
        value: f,
        writable: false,
        enumerable: false,
        configurable: true,
      });
    },
    newScope: function (id) {
      sb.scopes[id] = {};
    },
    dropScope: function (id) {
      delete sb.scopes[id];
    },
    evalIn: function (chain, code) {
      var objs = chain.map(function (id) {
        return sb.scopes[id];
      });
      return withFn(objs.length)(objs, code);
    },
    snapshot: function () {
      var out = {};
      var names = Object.getOwnPropertyNames(g);
      for (var i = 0; i < names.length; i++) {
        var k = names[i];
        if (builtins.has(k) || system.has(k) || k === "__sb") continue;
        var d = Object.getOwnPropertyDescriptor(g, k);
        if (!d || !("value" in d)) continue;
        out[k] = enc(d.value, []);
      }
      return JSON.stringify(out);
    },
    restore: function (s) {
      var o = JSON.parse(s);
      for (var k in o) g[k] = dec(o[k]);
    },
  };
  Object.defineProperty(g, "__sb", { value: sb, enumerable: false, writable: false, configurable: false });
})(globalThis);
