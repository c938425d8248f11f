package governance

import "github.com/tollgate/tollgate/metering"

// SKELETON (h3 owns this file): the worst case a request can cost.

// Ceiling is an upper bound on what a request can use and cost.
type Ceiling struct {
	InputTokens  int64
	OutputTokens int64
	// CostMicroUSD is the cost bound; valid only if Priced.
	CostMicroUSD int64
	Priced       bool
}

// Tokens is the token bound (input + output), what a token budget reserves.
func (c Ceiling) Tokens() int64 { return c.InputTokens + c.OutputTokens }

// EstimateCeiling bounds a request to model on provider in dialect (the
// registry's dialect name: anthropic-messages, openai-chat,
// openai-responses, gemini; others are bounded by the generic rule) from its
// body: input ≤ body bytes capped by the context window, output from the
// request's maximum (× n / candidateCount) else the model's maximum output,
// priced at the highest input rate that could apply and the output rate,
// long-context tier and server-tool fees included. fallback prices a model
// the table does not know at the table's fallback rates.
func EstimateCeiling(prices *metering.PriceTable, dialect, provider, model string, body []byte, fallback bool) Ceiling {
	return Ceiling{}
}

// PacingTokens is the input estimate a TPM limit reserves (about 3.5 bytes
// a token), corrected to the actual count when the request ends.
func PacingTokens(body []byte) int64 { return int64(len(body)*2/7) + 1 }
