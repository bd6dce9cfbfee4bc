package remote

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

type awsStore struct{ c *s3.Client }

func newStore(ctx context.Context, o Options) (store, error) {
	var opts []func(*config.LoadOptions) error
	if o.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(o.Profile))
	}
	if o.Region != "" {
		opts = append(opts, config.WithRegion(o.Region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, err
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	pathStyle := o.PathStyle
	if o.Endpoint != "" {
		u, err := url.Parse(o.Endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("endpoint %q is not an http:// or https:// URL", o.Endpoint)
		}
		pathStyle = pathStyle || isIPHost(u.Host)
	}
	c := s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
		so.UsePathStyle = pathStyle
		so.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		so.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	return &awsStore{c: c}, nil
}

func isIPHost(hostport string) bool {
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		h = hostport
	}
	return net.ParseIP(strings.Trim(h, "[]")) != nil || h == "localhost"
}

func (a *awsStore) head(ctx context.Context, bucket, key string) (objectMeta, error) {
	o, err := a.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		var re *awshttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound {
			return objectMeta{}, nil
		}
		return objectMeta{}, awsError(err)
	}
	m := objectMeta{size: aws.ToInt64(o.ContentLength), etag: strings.Trim(aws.ToString(o.ETag), `"`), meta: map[string]string{}, exists: true}
	if o.LastModified != nil {
		m.lastModified = *o.LastModified
	}
	for k, v := range o.Metadata {
		m.meta[strings.ToLower(k)] = v
	}
	return m, nil
}

func (a *awsStore) getRange(ctx context.Context, bucket, key string, off, n int64, etag string) (io.ReadCloser, error) {
	in := &s3.GetObjectInput{Bucket: &bucket, Key: &key}
	if n >= 0 {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	} else if off > 0 {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", off))
	}
	if etag != "" {
		in.IfMatch = aws.String(`"` + etag + `"`)
	}
	o, err := a.c.GetObject(ctx, in)
	if err != nil {
		return nil, awsError(err)
	}
	return o.Body, nil
}

// unsignedPayload leaves the body out of the request signature: the
// Content-MD5 the server checks covers it, so the SDK need not hash every
// byte once more with SHA-256.
func unsignedPayload(o *s3.Options) {
	o.APIOptions = append(o.APIOptions, v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)
}

func (a *awsStore) putObject(ctx context.Context, bucket, key string, body io.ReadSeeker, size int64, md5 []byte, meta map[string]string) error {
	_, err := a.c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: body, ContentLength: aws.Int64(size),
		ContentMD5: aws.String(base64.StdEncoding.EncodeToString(md5)), Metadata: meta}, unsignedPayload)
	return awsError(err)
}

func (a *awsStore) createMultipart(ctx context.Context, bucket, key string, meta map[string]string) (string, error) {
	o, err := a.c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key, Metadata: meta})
	if err != nil {
		return "", awsError(err)
	}
	return aws.ToString(o.UploadId), nil
}

func (a *awsStore) uploadPart(ctx context.Context, bucket, key, id string, num int, body io.ReadSeeker, size int64, md5 []byte) (string, error) {
	o, err := a.c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: &key, UploadId: &id, PartNumber: aws.Int32(int32(num)),
		Body: body, ContentLength: aws.Int64(size), ContentMD5: aws.String(base64.StdEncoding.EncodeToString(md5))},
		unsignedPayload)
	if err != nil {
		return "", awsError(err)
	}
	return aws.ToString(o.ETag), nil
}

func (a *awsStore) completeMultipart(ctx context.Context, bucket, key, id string, etags []string) (string, error) {
	parts := make([]types.CompletedPart, len(etags))
	for i, e := range etags {
		parts[i] = types.CompletedPart{PartNumber: aws.Int32(int32(i + 1)), ETag: aws.String(e)}
	}
	o, err := a.c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &bucket, Key: &key, UploadId: &id, MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
	if err != nil {
		return "", awsError(err)
	}
	return aws.ToString(o.ETag), nil
}

func (a *awsStore) abortMultipart(ctx context.Context, bucket, key, id string) error {
	_, err := a.c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &bucket, Key: &key, UploadId: &id})
	return awsError(err)
}

func (a *awsStore) listMultipart(ctx context.Context, bucket, prefix string) ([]string, error) {
	o, err := a.c.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &bucket, Prefix: &prefix})
	if err != nil {
		return nil, awsError(err)
	}
	var ids []string
	for _, u := range o.Uploads {
		ids = append(ids, aws.ToString(u.UploadId))
	}
	return ids, nil
}

func (a *awsStore) replaceMeta(ctx context.Context, bucket, key string, size int64, meta map[string]string) error {
	src := url.PathEscape(bucket) + "/" + strings.ReplaceAll(url.PathEscape(key), "%2F", "/")
	if size <= maxPartSize {
		_, err := a.c.CopyObject(ctx, &s3.CopyObjectInput{Bucket: &bucket, Key: &key, CopySource: &src, Metadata: meta, MetadataDirective: types.MetadataDirectiveReplace})
		return awsError(err)
	}
	id, err := a.createMultipart(ctx, bucket, key, meta)
	if err != nil {
		return err
	}
	const ps = 1 << 30
	var etags []string
	for off := int64(0); off < size; off += ps {
		rng := fmt.Sprintf("bytes=%d-%d", off, min(off+ps, size)-1)
		o, err := a.c.UploadPartCopy(ctx, &s3.UploadPartCopyInput{Bucket: &bucket, Key: &key, UploadId: &id, PartNumber: aws.Int32(int32(len(etags) + 1)), CopySource: &src, CopySourceRange: &rng})
		if err != nil {
			a.abortMultipart(context.Background(), bucket, key, id)
			return awsError(err)
		}
		etags = append(etags, aws.ToString(o.CopyPartResult.ETag))
	}
	_, err = a.completeMultipart(ctx, bucket, key, id, etags)
	return err
}

func (a *awsStore) remove(ctx context.Context, bucket, key string) error {
	_, err := a.c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &bucket, Key: &key})
	return awsError(err)
}

func awsError(err error) error {
	if err == nil {
		return nil
	}
	var re *awshttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() == 0 {
		return err // no answer: the request could not be sent or broke off
	}
	code, msg := "", err.Error()
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code, msg = ae.ErrorCode(), ae.ErrorMessage()
	}
	switch st := re.HTTPStatusCode(); {
	case st == http.StatusPreconditionFailed:
		return ErrChanged
	case st == http.StatusForbidden || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch":
		return accessDenied(code, msg)
	default:
		return &statusError{status: st, msg: fmt.Sprintf("%s: %s", code, msg)}
	}
}

// storeTransient: a request the SDK could not send or whose answer broke
// off (a reset, a malformed answer) is worth another try.
func storeTransient(err error) bool {
	var se *smithyhttp.RequestSendError
	return errors.As(err, &se)
}
