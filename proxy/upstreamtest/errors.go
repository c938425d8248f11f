package upstreamtest

import "net/http"

// Error bodies in each provider's envelope. Messages are fixed text and
// never echo the key, not even masked as api.openai.com does, so a test can
// assert that no credential appears in any response.

type anthropicError struct {
	Type  string `json:"type"`
	Error struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
}

func anthropicErrorEnvelope(typ, msg string) anthropicError {
	e := anthropicError{Type: "error"}
	e.Error.Type, e.Error.Message = typ, msg
	return e
}

type openAIError struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func openAIErrorEnvelope(typ string, code *string, msg string) openAIError {
	var e openAIError
	e.Error.Message, e.Error.Type, e.Error.Code = msg, typ, code
	return e
}

type geminiError struct {
	Error struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Status  string `json:"status"`
	} `json:"error"`
}

func geminiErrorEnvelope(code int, msg string) geminiError {
	var e geminiError
	e.Error.Code, e.Error.Message, e.Error.Status = code, msg, geminiStatus(code)
	return e
}

func geminiStatus(code int) string {
	switch code {
	case http.StatusBadRequest:
		return "INVALID_ARGUMENT"
	case http.StatusUnauthorized:
		return "UNAUTHENTICATED"
	case http.StatusForbidden:
		return "PERMISSION_DENIED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	case http.StatusRequestEntityTooLarge:
		return "INVALID_ARGUMENT"
	case http.StatusTooManyRequests:
		return "RESOURCE_EXHAUSTED"
	case http.StatusServiceUnavailable, 529:
		return "UNAVAILABLE"
	case http.StatusGatewayTimeout:
		return "DEADLINE_EXCEEDED"
	}
	if code >= 500 {
		return "INTERNAL"
	}
	return "FAILED_PRECONDITION"
}

func ptr(s string) *string { return &s }

// errorBody renders the error a provider of dialect d returns with status;
// msg replaces the provider's usual message when not empty.
func errorBody(d Dialect, status int, msg string) []byte {
	switch d {
	case Anthropic:
		typ, def := "invalid_request_error", "Invalid request"
		switch {
		case status == http.StatusUnauthorized:
			typ, def = "authentication_error", "invalid x-api-key"
		case status == http.StatusForbidden:
			typ, def = "permission_error", "Your API key does not have permission to use the specified resource."
		case status == http.StatusNotFound:
			typ, def = "not_found_error", "Not found"
		case status == http.StatusRequestEntityTooLarge:
			typ, def = "request_too_large", "Request exceeds the maximum allowed number of bytes."
		case status == http.StatusTooManyRequests:
			typ, def = "rate_limit_error", "This request would exceed the rate limit for your organization. Please try again later."
		case status == 529:
			typ, def = "overloaded_error", "Overloaded"
		case status >= 500:
			typ, def = "api_error", "Internal server error"
		}
		return mustJSON(anthropicErrorEnvelope(typ, or(msg, def)))
	case OpenAIChat, OpenAIResponses:
		typ, def := "invalid_request_error", "Invalid request."
		var code *string
		switch {
		case status == http.StatusUnauthorized:
			code, def = ptr("invalid_api_key"), "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
		case status == http.StatusForbidden:
			code, def = ptr("unsupported_country_region_territory"), "Country, region, or territory not supported."
		case status == http.StatusNotFound:
			code, def = ptr("unknown_url"), "Unknown request URL."
		case status == http.StatusTooManyRequests:
			typ, code, def = "requests", ptr("rate_limit_exceeded"), "Rate limit reached for requests. Please try again in 1s."
		case status == http.StatusServiceUnavailable || status == 529:
			typ, def = "server_error", "The engine is currently overloaded, please try again later."
		case status >= 500:
			typ, def = "server_error", "The server had an error while processing your request. Sorry about that!"
		}
		return mustJSON(openAIErrorEnvelope(typ, code, or(msg, def)))
	default:
		def := "Request contains an invalid argument."
		switch {
		case status == http.StatusUnauthorized:
			def = "API key not valid. Please pass a valid API key."
		case status == http.StatusNotFound:
			def = "Requested entity was not found."
		case status == http.StatusTooManyRequests:
			def = "Resource has been exhausted (e.g. check quota)."
		case status == http.StatusServiceUnavailable || status == 529:
			def = "The model is overloaded. Please try again later."
		case status >= 500:
			def = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
		}
		return mustJSON(geminiErrorEnvelope(status, or(msg, def)))
	}
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
