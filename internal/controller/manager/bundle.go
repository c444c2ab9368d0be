package manager

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// BundleSource gives the server's X.509 authorities as PEM
// (adminclient.Client.BundlePEM).
type BundleSource interface {
	BundlePEM(ctx context.Context) ([]byte, error)
}

// BundleConfigMap is where the controller publishes the trust bundle for
// agents to bootstrap from (their trust_bundle_path on a ConfigMap
// volume), as SPIRE's k8sbundle notifier does.
type BundleConfigMap struct {
	Namespace, Name, Key string
}

// publishBundle writes the server's bundle into the ConfigMap when it
// differs; it reads the ConfigMap directly (the controller keeps no
// ConfigMap informer: it would cache every ConfigMap of the cluster).
func (c *Controller) publishBundle(ctx context.Context) error {
	cm := c.cfg.BundleConfigMap
	pem, err := c.cfg.Bundle.BundlePEM(ctx)
	if err != nil {
		return fmt.Errorf("trust bundle: %w", err)
	}
	var cur corev1.ConfigMap
	err = c.reader.Get(ctx, types.NamespacedName{Namespace: cm.Namespace, Name: cm.Name}, &cur)
	switch {
	case apierrors.IsNotFound(err):
		obj := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Namespace: cm.Namespace, Name: cm.Name, Labels: map[string]string{"app.kubernetes.io/managed-by": "sigil-controller"}},
			Data:       map[string]string{cm.Key: string(pem)},
		}
		if err := c.client.Create(ctx, obj); err != nil {
			return fmt.Errorf("create ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
		}
		c.cfg.Log.Info("Trust bundle published", "configmap", cm.Namespace+"/"+cm.Name)
		return nil
	case err != nil:
		return fmt.Errorf("get ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	if cur.Data[cm.Key] == string(pem) {
		return nil
	}
	next := cur.DeepCopy()
	if next.Data == nil {
		next.Data = map[string]string{}
	}
	next.Data[cm.Key] = string(pem)
	if err := c.client.Update(ctx, next); err != nil {
		return fmt.Errorf("update ConfigMap %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	c.cfg.Log.Info("Trust bundle published", "configmap", cm.Namespace+"/"+cm.Name)
	return nil
}
